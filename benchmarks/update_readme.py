"""Copy the generated benchmark tables into docs/benchmarks.md between their markers, so the documented numbers are
the results files' numbers: <!-- results:ssl --> ... <!-- /results:ssl --> and <!-- results:speed --> ... .
(The tables lived in README.md until the README was cut down to a newcomer's page; the script keeps its name.)"""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.path.join(ROOT, "docs", "benchmarks.md")
SOURCES = {"ssl": os.path.join(HERE, "results", "ssl-cpu.md"),
           "speed": os.path.join(HERE, "results", "speed", "speed.md"),
           "plateau-L2": os.path.join(HERE, "results", "cpu-plateau", "plateau-L2-x3.md"),
           "plateau-L5": os.path.join(HERE, "results", "cpu-plateau", "plateau-L5-x3.md"),
           "annotation": os.path.join(HERE, "results", "annotation-cpu.md"),
           "peer-bn": os.path.join(HERE, "results", "avx2-fp32", "ssl-cpu.md"),
           "plateau-weighted-L2": os.path.join(HERE, "results", "avx2-fp32", "cpu-plateau",
                                               "plateau-supervised-micd-weights-L2-x3.md"),
           "plateau-micd-L2": os.path.join(HERE, "results", "avx2-fp32", "cpu-plateau", "plateau-micd-L2-x3.md")}


def main() -> None:
    text = open(TARGET, encoding="utf-8").read()
    for key, path in SOURCES.items():
        if not os.path.exists(path):
            continue
        body = open(path, encoding="utf-8").read().split("\n", 1)[1].strip()  # drop the file's own title
        body = re.sub(r"^## ", "### ", body, flags=re.M)  # its sections sit under a section (##) of the page
        body = f"<!-- results:{key} (copied from {os.path.relpath(path, ROOT).replace(os.sep, '/')} by " \
               f"benchmarks/update_readme.py) -->\n{body}\n<!-- /results:{key} -->"
        text = re.sub(rf"<!-- results:{key}.*?<!-- /results:{key} -->", lambda m: body, text, flags=re.S)
    open(TARGET, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    main()
