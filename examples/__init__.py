"""The example workflow that ``flowcraft-puller dev`` runs."""
