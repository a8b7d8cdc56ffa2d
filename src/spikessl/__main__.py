"""``python -m spikessl`` (what ``torchrun -m spikessl`` runs), and the ``spikessl`` command."""

import sys


def main() -> int:
    """``spikessl.cli.main``, with a Ctrl-C during the seconds PyTorch takes to load ended
    like one later (exit status 130, one line), not with an import traceback."""
    try:
        from spikessl.cli import main as cli_main
    except KeyboardInterrupt:
        print("spikessl: interrupted (Ctrl-C) while starting; nothing was run", file=sys.stderr)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
