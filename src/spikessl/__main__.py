"""``python -m spikessl`` (what ``torchrun -m spikessl`` runs), and the ``spikessl`` command."""

import sys


def main() -> int:
    """``spikessl.cli.main``. Its module loads in milliseconds (no PyTorch): a Ctrl-C during
    the seconds PyTorch then takes to load is answered there, with exit status 130."""
    from spikessl.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
