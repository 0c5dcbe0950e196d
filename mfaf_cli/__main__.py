"""Allow ``python -m mfaf_cli``."""

from mfaf_cli.cli.main import main

if __name__ == "__main__":
    main()
