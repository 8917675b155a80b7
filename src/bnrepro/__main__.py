"""`python -m bnrepro ARGS`: what `train.py ARGS` does in the checkout (and `bnrepro-train ARGS` installed)."""

from bnrepro.train import main

if __name__ == "__main__":
    main()
