import sys

from proxy.replay.cli import main

sys.exit(main())
