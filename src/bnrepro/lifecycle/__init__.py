"""A training job's life around `trainer.fit`: how it starts (identity; fresh, resumed or skipped),
its checks before training (preflight), DDP rank launch (distributed), signals (interruption) and
process exit (fast_exit). The Lightning callbacks that save checkpoints and stop a diverged run sit in
`bnrepro.callbacks`, beside the other callbacks the Trainer is given."""
