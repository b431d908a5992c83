import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

# Runs internvl_plugin_bridge.install() when Python starts, so `xtuner train` imports on transformers 5 (see the
# module's docstring). A .pth file must lie in site-packages itself: both install modes are taught to put it there.
BRIDGE_PTH = 'internvl_plugin_bridge.pth'


class BuildPyWithBridge(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(BRIDGE_PTH, os.path.join(self.build_lib, BRIDGE_PTH))


class _StrategyWithBridge:
    """Wraps setuptools' editable strategy (which writes the editable .pth) to add the bridge's .pth beside it."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping) -> None:
        self.strategy(wheel, files, mapping)
        with open(BRIDGE_PTH, encoding='utf-8') as f:
            wheel.writestr(BRIDGE_PTH, f.read())


class EditableWheelWithBridge(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithBridge(super()._select_strategy(*args, **kwargs))


setup(
    name='internvl_plugin',
    version='0.1.0',
    description='Fine-tune InternVL 1.5 / 2 / 2.5 with XTuner and MMEngine configs, '
                'no remote code for the weights.',
    packages=find_packages(include=['internvl_plugin', 'internvl_plugin.*']),
    py_modules=['internvl_plugin_bridge'],
    cmdclass={'build_py': BuildPyWithBridge, 'editable_wheel': EditableWheelWithBridge},
    python_requires='>=3.9',
    install_requires=[
        'xtuner==0.2.0',
        'huggingface_hub',
        'numpy',
        'opencv-python',  # video decoding (mmengine depends on it too)
        'peft>=0.14',
        'pillow',
        'safetensors',
    ],
    extras_require={
        'deepspeed': ['deepspeed>=0.16.2'],
        'test': ['pytest'],
    },
)
