"""The pure workflow engine: blueprints, evaluators, routing, node execution, built-ins."""
