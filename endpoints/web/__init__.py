"""The web UI: htmx pages for the models list, the Serving tab, tokens and permissions."""
