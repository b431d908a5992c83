"""Chat template names: the official ones a checkpoint's config.json carries, and the XTuner-style spellings users
write for them. Both wings need them: the dataset renders templates, the converter writes config.json, where the
official code accepts only the official names."""

ALIASES = {'internlm2_chat': 'internlm2-chat', 'hermes2': 'Hermes-2', 'hermes-2': 'Hermes-2',
           'phi3_chat': 'phi3-chat', 'internvl2.5': 'internvl2_5'}


def official_template_name(name: str) -> str:
    """The official spelling of `name` (unchanged when it is one already, or unknown)."""
    return ALIASES.get(name, ALIASES.get(name.lower(), name))
