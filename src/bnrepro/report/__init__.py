"""Reading tracked runs back from MLflow and turning them into the paper's tables and figures."""
