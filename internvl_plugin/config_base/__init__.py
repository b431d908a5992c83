"""What every shipped config reads with `read_base()`, installed with the package so that a config copied anywhere
still finds it (`from internvl_plugin.config_base.schedule_runtime import *`)."""
