import sys

from affectmae.cli import main

sys.exit(main())
