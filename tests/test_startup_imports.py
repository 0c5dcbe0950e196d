"""What a predict run imports before it reads anything (each import is resident memory)."""

from __future__ import annotations

import subprocess
import sys


def test_predict_imports_neither_ssl_nor_onnx() -> None:
    """ssl (via urllib.request, which xml.sax.saxutils imports) is ~3 MB that a run on local
    files never uses; onnx is ~12 MB that reading an .onnx model's record does not need.

    Counted beyond what rasterio itself imports: where boto3 is installed, rasterio.session
    imports it, and botocore imports http.client and so ssl; that is the environment's, not
    mfaf's, and CI's interpreter has boto3."""
    code = (
        "import sys, rasterio; "
        "before = {m for m in ('ssl', 'urllib.request', 'onnx') if m in sys.modules}; "
        "import mfaf_cli.cli.main, mfaf_cli.cli.predict, mfaf_cli.pipeline.predict, "
        "mfaf_cli.coreg.stack, mfaf_cli.coreg.mosaic, mfaf_cli.io.mosaic, mfaf_cli.io.xmltext; "
        "mfaf_cli.io.xmltext.quoteattr(mfaf_cli.io.xmltext.escape('a<b'));"  # a sidecar's end
        "print(sorted(m for m in ('ssl', 'urllib.request', 'onnx') "
        "if m in sys.modules and m not in before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_xml_escaping_is_saxutils() -> None:
    from xml.sax.saxutils import escape, quoteattr

    from mfaf_cli.io import xmltext

    for text in ["a<b>&c", 'say "hi"', "it's", "both ' and \"", "tab\tnew\nline\r", "&amp;", ""]:
        assert xmltext.escape(text) == escape(text)
        assert xmltext.quoteattr(text) == quoteattr(text)
