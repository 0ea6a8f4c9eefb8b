"""LeRobot datasets: the v3.0 store we write (crash-safe appends) and v2.x/v3.0 reading.

Our additions (``meta/cameras.json``, ``meta/episodes_extra.jsonl``) sit beside LeRobot's
files; ``info.json`` carries only keys LeRobot knows.
"""

from wallwm.data.lerobot.info import features_from_episode
from wallwm.data.lerobot.reader import LeRobotReader
from wallwm.data.lerobot.video import VideoError
from wallwm.data.lerobot.writer import LeRobotWriter

__all__ = ["LeRobotReader", "LeRobotWriter", "VideoError", "features_from_episode"]
