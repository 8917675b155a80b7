"""Data modules: LightningDataModules that know nothing of Hydra or MLflow."""
