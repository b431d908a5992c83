from setuptools import find_packages, setup

setup(
    name='internvl_plugin',
    version='0.1.0',
    description='Fine-tune InternVL 1.5 / 2 / 2.5 with XTuner and MMEngine configs, '
                'no remote code for the weights.',
    packages=find_packages(include=['internvl_plugin', 'internvl_plugin.*']),
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
        # 0.19.7 removed deepspeed.runtime.fp16.onebit, which mmengine's DeepSpeedStrategy imports.
        'deepspeed': ['deepspeed>=0.16.2,<0.19.7'],
        'test': ['pytest'],
    },
)
