from .config import TASK_DEFAULTS, ConfigError, RunConfig, load_config
