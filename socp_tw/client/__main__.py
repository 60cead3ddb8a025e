"""``python -m socp_tw.client``."""

import sys

from socp_tw.client import main

sys.exit(main())
