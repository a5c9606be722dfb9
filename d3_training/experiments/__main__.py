import sys

from d3_training.experiments.runner import main

sys.exit(main())
