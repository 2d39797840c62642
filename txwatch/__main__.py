import sys

from txwatch.cli import main

sys.exit(main())
