import sys

from cdcpipe.cli import main

sys.exit(main())
