"""Built-in models and data sets, all offline."""
