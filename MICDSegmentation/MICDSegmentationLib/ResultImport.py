"""The result import lives in MICDCommon (`MICDCommon.resultimport`): the training panel's "Suggest next cases" loads
a suggested volume's prediction with it as well. Its names stay importable from here."""

from MICDCommon.resultimport import (FALLBACK_COLORS, MODEL_ATTRIBUTE, RESULT_ATTRIBUTE, SOURCE_ATTRIBUTE,
                                     find_previous_result, import_label_file, import_uncertainty, label_color,
                                     result_name)

__all__ = ["FALLBACK_COLORS", "MODEL_ATTRIBUTE", "RESULT_ATTRIBUTE", "SOURCE_ATTRIBUTE", "find_previous_result",
           "import_label_file", "import_uncertainty", "label_color", "result_name"]
