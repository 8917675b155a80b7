"""bnrepro: reproduce Ioffe & Szegedy (2015), Batch Normalization, as tracked experiments."""
