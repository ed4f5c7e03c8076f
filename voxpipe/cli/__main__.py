"""``python -m voxpipe.cli`` (what torchrun launches: ``torchrun ... -m voxpipe.cli train BUNDLE``)."""

import sys

from voxpipe.cli.main import main

sys.exit(main())
