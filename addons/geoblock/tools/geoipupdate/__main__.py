"""`python -m geoblock.tools.geoipupdate`: the same command as `geoblock-geoip-update`."""

import sys

from geoblock.tools.geoipupdate.cli import main

if __name__ == "__main__":
    sys.exit(main())
