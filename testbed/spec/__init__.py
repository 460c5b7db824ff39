"""What users write: typed models, YAML loading with positions, Jinja2 templating."""
