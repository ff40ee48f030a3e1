"""The fault suite: hostile servers and hostile answers; every case must end, quickly, in a recorded outcome."""
