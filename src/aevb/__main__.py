"""``python -m aevb`` (and ``torchrun … -m aevb``): the ``aevb`` command."""

from aevb.cli import console

if __name__ == "__main__":
    console()
