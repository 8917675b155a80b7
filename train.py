"""Train one configuration, or sweep many with -m: `python train.py -m norm=bn,none optim=lr_x5,lr_x30`.

The checkout's entry point; an installed bnrepro has the same as `bnrepro-train` and `python -m bnrepro`.
"""

from bnrepro.train import main  # first: it installs bnrepro.lifecycle.fast_exit before anything else loads

if __name__ == "__main__":
    main()
