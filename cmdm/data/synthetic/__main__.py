import sys

from cmdm.data.synthetic.cli import main

sys.exit(main())
