"""Training datasets (OMBRIA, Sen1Floods11, WHU-OPT-SAR, user scene lists).

One room per job: :mod:`.base` (the reader base class and shared helpers), :mod:`.transforms`
(crops, flips, jitter), :mod:`.splits` (seeded and official splits), one module per dataset
(:mod:`.ombria`, :mod:`.sen1floods11`, :mod:`.whu`, :mod:`.folder`) and :mod:`.registry`
(``open_dataset``). :mod:`.datasets` re-exports them for older imports. Import those modules
explicitly; they import torch, this package does not.
"""
