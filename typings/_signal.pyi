# Type stub for the C half of the signal module (isolate imports it to skip enum).
from signal import *  # noqa: F403
from signal import Signals as Signals
