"""Held-out rephrasings of each task's instruction (the `rephrased` condition).

No build uses these: the sim source gives every episode of a task the one instruction in
`wallwm.data.sources.sim.source.TASKS` (tests assert that none of these equals it). Each is
written so that `wallwm.data.captions.parse_task` still finds the object (and the place where
the task has one), because the event planner fills the training caption templates with the
names the instruction uses: a rephrasing may rename the object ("the red disc"), and event
mode then sees that name in every caption.
"""

from __future__ import annotations

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "pick-place-v3": (
        "grab the red puck and put it down on the blue goal",
        "lift the red disc and set it on the blue target",
        "move the red puck onto the blue goal by picking it up",
        "take the red puck and drop it off at the blue spot",
        "pick the red disk up and place it on the blue mark",
    ),
    "push-v3": (
        "slide the red puck to the green goal",
        "shove the red disc onto the green target",
        "nudge the red puck to the green spot",
        "push the red disk to the green mark",
        "drive the red puck to the green goal",
    ),
    "drawer-open-v3": (
        "slide out the green drawer",
        "drag the green drawer towards you",
        "pull open the green drawer",
        "draw out the green drawer",
        "open up the green drawer",
    ),
    "button-press-topdown-v3": (
        "push down the red button from above",
        "hit the red button from the top",
        "press down on the red button",
        "press the red button with the gripper from overhead",
        "tap the red button from above",
    ),
}


def paraphrase(task: str, i: int) -> str:
    """The rephrased instruction of eval unit i of `task` (cycling through the list)."""
    try:
        options = PARAPHRASES[task]
    except KeyError:
        raise ValueError(f"no paraphrases for task {task!r}; known: {', '.join(PARAPHRASES)}"
                         ) from None
    return options[i % len(options)]
