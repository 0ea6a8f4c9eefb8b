"""The on-robot agent (`wallwm-agent`): installable alone (components/robot_agent/pyproject.toml),
no torch, Prefect or MLflow. See agent.py for the update cycle and README "Release and robots"."""
