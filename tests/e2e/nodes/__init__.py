"""Node modules the daemon subprocesses of the end-to-end tests import (``workflows.nodes``)."""
