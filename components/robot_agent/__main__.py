import sys

from components.robot_agent.cli import main

sys.exit(main())
