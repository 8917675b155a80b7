"""Networks of the paper: plain torch.nn.Modules that know nothing of Hydra, Lightning or MLflow."""
