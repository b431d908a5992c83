"""Where XTuner's InternVL guide sends users to convert: `python configs/v1_5/convert_to_official.py CONFIG PTH
SAVE_PATH`. XTuner's own script of that name builds the model and then reads XTuner-only attributes
(`use_visual_encoder_lora`), so it fails on this plugin's checkpoints; this one takes the same three arguments
(and the options of tools/convert_to_official.py) and runs the plugin's converter."""
import sys

from internvl_plugin.model.checkpoint.convert_command import main

if __name__ == '__main__':
    sys.exit(main())
