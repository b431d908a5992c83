from internvl_plugin.demo import run_demo


def test_demo_learns_from_pixels_through_conversion(tmp_path):
    result = run_demo(str(tmp_path / 'demo'))
    assert result['before'] <= 0.25  # untrained: no better than chance (4 colours)
    assert result['after'] >= 0.9    # the converted model answers from the image
    assert (tmp_path / 'demo' / 'converted' / 'config.json').exists()
