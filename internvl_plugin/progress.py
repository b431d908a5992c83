"""Progress a user sees while training runs."""
from mmengine.hooks import LoggerHook


class ProgressLoggerHook(LoggerHook):
    """MMEngine's LoggerHook, whose interval is at most a tenth of the run (at least 1): with the configs' 10, a
    run of 8 iterations (a first try on a small data set) printed nothing until it had ended."""

    def before_train(self, runner) -> None:
        self.interval = max(1, min(self.interval, runner.max_iters // 10))
