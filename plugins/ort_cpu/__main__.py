import sys

from atp.plugins.ort_cpu import main

sys.exit(main())
