"""A node module that takes its time to import, holding a daemon in its start-up: it creates the
file named by ``$FLOWCRAFT_E2E_IMPORTING`` and then sleeps ``$FLOWCRAFT_E2E_IMPORT_SECONDS``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flowcraft_puller import Registry

Path(os.environ["FLOWCRAFT_E2E_IMPORTING"]).touch()
time.sleep(float(os.environ["FLOWCRAFT_E2E_IMPORT_SECONDS"]))

NODES = Registry()
