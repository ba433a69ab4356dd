"""Hanging protocols, headless (issue 15 item 4): files, matching, scoring, selectors, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from _viewer_data import STUDY, write_ct
from hilum.dicom.generator import CORONAL, SAGITTAL
from hilum.ui.viewer.hanging import (
    FOLDER,
    Catalog,
    LoadError,
    ProtocolError,
    SeriesFacts,
    StudyFacts,
    choose,
    exact,
    load_protocols,
    parse_protocol,
    place,
    plane_of,
    protocol_toml,
    read_series_header,
    save_protocol,
)
from hilum.ui.viewer.model import Layout

CT_CHEST = """
schema_version = 1
name = "Chest"

[[match]]
modality = "CT"
weight = 10
required = true

[[match]]
body_part = ["CHEST", "THORAX"]
weight = 5

[[stage]]
name = "Two"
layout = "1x2"
link_scroll = true

[[stage.viewport]]
plane = "axial"
image_type = ["!LOCALIZER"]
pick = "largest"
window = "Lung"

[[stage.viewport]]
plane = "coronal"

[[stage]]
layout = "1x1"

[[stage.viewport]]
image_type = ["LOCALIZER"]
"""


def _facts(uid: str, **kw) -> SeriesFacts:  # type: ignore[no-untyped-def]
    kw.setdefault("header", True)
    return SeriesFacts(series_uid=uid, **kw)


def _study(series: list[SeriesFacts], **kw) -> StudyFacts:  # type: ignore[no-untyped-def]
    row = {"ModalitiesInStudy": kw.pop("modalities", "CT"), "StudyDescription": kw.pop("description", "CT Thorax"),
           "PatientSex": kw.pop("sex", "M"), "PatientBirthDate": kw.pop("birth", "19580317"),
           "StudyDate": kw.pop("date", "20261102")}  # fmt: skip
    return StudyFacts.from_rows(row, series, catalog=Catalog({0: series}), **kw)


SERIES = [
    _facts("loc", number=1, modality="CT", description="Topogram", images=1, plane="coronal",
           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), body_part="CHEST"),
    _facts("ax5", number=2, modality="CT", description="Axial 5 mm", images=60, plane="axial",
           image_type=("ORIGINAL", "PRIMARY", "AXIAL"), thickness=5.0, body_part="CHEST"),
    _facts("ax1", number=3, modality="CT", description="Axial 1 mm lung", images=300, plane="axial",
           image_type=("ORIGINAL", "PRIMARY", "AXIAL"), thickness=1.0, body_part="CHEST"),
    _facts("cor", number=4, modality="CT", description="Coronal MPR", images=80, plane="coronal",
           image_type=("DERIVED", "SECONDARY", "REFORMATTED"), thickness=3.0, body_part="CHEST"),
]  # fmt: skip


# ---------------------------------------------------------------- facts


def test_plane_of_image_orientation():
    assert plane_of((1, 0, 0, 0, 1, 0)) == "axial"
    assert plane_of(CORONAL) == "coronal"
    assert plane_of(SAGITTAL) == "sagittal"
    assert plane_of((1, 0, 0, 0, 0.7071, -0.7071)) == "oblique"  # 45° between axial and coronal
    assert plane_of((1, 0, 0, 0, 0.94, -0.342)) == "axial"  # 20° gantry tilt is still axial
    assert plane_of(None) == plane_of((1, 0, 0)) == plane_of((0, 0, 0, 0, 0, 0)) == ""


def test_study_facts_from_archive_rows():
    s = _study(SERIES)
    assert s.modalities == ("CT",) and s.body_parts == ("CHEST",) and s.n_series == 4
    assert s.sex == "M" and s.age == 68.0  # born 1958-03-17, studied 2026-11-02
    assert _study(SERIES, birth="19581231").age == 67.0  # birthday not reached yet
    assert _study(SERIES, birth="").age is None


def test_series_header_read_once_from_the_files(tmp_path):
    ax = write_ct(tmp_path / "ax", rows=16, slices=3)
    cor = write_ct(tmp_path / "cor", rows=16, slices=3, orientation=CORONAL, series_number=2, thickness=2.0)
    assert read_series_header(ax[1]) == {"plane": "axial", "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
                                         "thickness": 5.0}  # fmt: skip
    h = read_series_header(cor[1])
    assert h["plane"] == "coronal" and "REFORMATTED" in h["image_type"] and h["thickness"] == 2.0
    light = [SeriesFacts("a", modality="CT", number=1), SeriesFacts("c", modality="CT", number=2)]
    cat = Catalog({0: light}, {"a": ax[1], "c": cor[1]})
    assert cat.planes() == {"axial", "coronal"} and cat.headers_read == 2
    assert cat.planes() == {"axial", "coronal"} and cat.headers_read == 2  # cached
    assert cat.of(0)[1].header and cat.of(0)[1].thickness == 2.0


# ---------------------------------------------------------------- matching and scoring


def test_best_score_wins_and_required_rules_exclude():
    shipped, errors = load_protocols(None)
    assert not errors
    chest = parse_protocol(CT_CHEST)
    study = _study(SERIES)
    assert chest.score(study) == (15.0, 2)
    assert choose([*shipped, chest], study) is chest  # 15 beats the CT default's 10
    mr = _study([_facts("m", modality="MR", body_part="HEAD")], modalities="MR")
    assert chest.score(mr) is None  # its required modality rule fails
    assert choose([*shipped, chest], mr).name == "MR default"
    # a study of a modality without its own protocol: the generic fallback
    ot = _study([_facts("o", modality="OT")], modalities="OT")
    assert choose(shipped, ot).name == "Default"


def test_every_modality_has_a_shipped_default():
    shipped, _ = load_protocols(None)
    for modality, name in [("CT", "CT default"), ("MR", "MR default"), ("CR", "Radiography (CR/DX) default"),
                           ("DX", "Radiography (CR/DX) default"), ("US", "Ultrasound (US) default"),
                           ("MG", "Mammography (MG) default"), ("PT", "PET default"),
                           ("NM", "Nuclear medicine (NM) default"), ("XA", "Angiography (XA/RF) default"),
                           ("SM", "Default")]:  # fmt: skip
        study = _study([_facts("s", modality=modality)], modalities=modality, description="")
        assert choose(shipped, study).name == name, modality


def test_shipped_chest_protocol_needs_both_reformats():
    shipped, _ = load_protocols(None)
    sag = _facts("sag", number=5, modality="CT", description="Sagittal MPR", images=80, plane="sagittal",
                 image_type=("DERIVED", "SECONDARY", "REFORMATTED"), body_part="CHEST")  # fmt: skip
    assert choose(shipped, _study(SERIES)).name == "CT default"  # coronal only
    assert choose(shipped, _study([*SERIES, sag])).name == "CT chest with reformats"
    head = [SeriesFacts(**{**f.__dict__, "body_part": "HEAD"}) for f in [*SERIES, sag]]
    assert choose(shipped, _study(head, description="CT Head")).name == "CT head with reformats"


def test_ties_go_to_the_more_specific_then_the_users_then_the_name():
    a = parse_protocol('name = "A"\n[[match]]\nmodality = "CT"\nweight = 5\n[[stage]]\nlayout = "1x1"\n'
                       "[[stage.viewport]]\n")  # fmt: skip
    b = parse_protocol('name = "B"\n[[match]]\nmodality = "CT"\nbody_part = "CHEST"\nweight = 5\n[[stage]]\n'
                       'layout = "1x1"\n[[stage.viewport]]\n')  # fmt: skip
    study = _study(SERIES)
    assert a.score(study) == b.score(study)[:1] + (1,) and b.score(study) == (5.0, 2)
    assert choose([a, b], study) is b and choose([b, a], study) is b  # more criteria held
    a2 = parse_protocol('name = "A2"\n[[match]]\nmodality = "CT"\nweight = 5\n[[stage]]\nlayout = "1x1"\n'
                        "[[stage.viewport]]\n", user=True)  # fmt: skip
    assert choose([a, a2], study) is a2  # the user's own
    c = parse_protocol('name = "0 first"\n[[match]]\nmodality = "CT"\nweight = 5\n[[stage]]\nlayout = "1x1"\n'
                       "[[stage.viewport]]\n")  # fmt: skip
    assert choose([a, c], study) is c and choose([c, a], study) is c  # then by name


@pytest.mark.parametrize(
    ("rule", "holds"),
    [
        ('description = "(?i)thorax"', True),
        ('description = "abdomen"', False),
        ('series_description = "MPR"', True),
        ('series_plane = "sagittal"', False),
        ("min_priors = 1", True),
        ("min_priors = 3", False),
        ("max_priors = 0", False),
        ("min_series = 4", True),
        ("max_series = 3", False),
        ('sex = "F"', False),
        ("min_age = 60\nmax_age = 70", True),
        ("max_age = 18", False),
        ('modality = ["MR", "CT"]', True),
    ],
)
def test_match_criteria(rule, holds):
    p = parse_protocol(f'name = "P"\n[[match]]\n{rule}\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\n')
    study = _study(SERIES, n_priors=2)
    assert (p.score(study) is not None) == holds


# ---------------------------------------------------------------- selectors


def test_stage_places_series_by_plane_type_and_size():
    chest = parse_protocol(CT_CHEST)
    cat = Catalog({0: SERIES})
    got = place(chest.stages[0], cat)
    assert [p.series.series_uid for p in got] == ["ax1", "cor"]  # largest axial (300 images), not the topogram
    assert got[0].selector.window == "Lung"
    assert chest.stages[0].layout == Layout(1, 2) and chest.stages[0].link_scroll is True
    assert place(chest.stages[1], cat)[0].series.series_uid == "loc"
    assert chest.stages[1].name == "Stage 2"


def test_selector_keys():
    def pick(selector: str, series=SERIES):  # type: ignore[no-untyped-def]
        p = parse_protocol(f'name = "P"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\n{selector}\n')
        got = place(p.stages[0], Catalog({0: list(series)}))[0]
        return got.series.series_uid if got.series is not None else None

    assert pick("") == "loc"  # no criteria: the first series by number
    assert pick('plane = "axial"') == "ax5"  # first by series number
    assert pick('plane = "axial"\npick = "last"') == "ax1"
    assert pick('description = "(?i)LUNG"') == "ax1"  # case-insensitive regex search
    assert pick("max_thickness = 1.5") == "ax1"
    assert pick("min_thickness = 2\nmax_thickness = 4") == "cor"
    assert pick('image_type = ["REFORMATTED"]') == "cor"
    assert pick('image_type = ["PRIMARY", "!LOCALIZER"]') == "ax5"
    assert pick('modality = "MR"') is None
    assert pick('modality = "MR"\nfallback = true') == "loc"
    assert pick('plane = "sagittal"') is None


def test_viewports_prefer_series_not_yet_shown_and_reuse_only_on_purpose():
    p = parse_protocol('name = "P"\n[[stage]]\nlayout = "2x2"\n' + '[[stage.viewport]]\nplane = "axial"\n' * 3
                       + "[[stage.viewport]]\n")  # fmt: skip
    got = [x.series.series_uid if x.series else None for x in place(p.stages[0], Catalog({0: SERIES}))]
    assert got == ["ax5", "ax1", "ax5", "loc"]  # two axial series, a third axial viewport shows one again
    empty = parse_protocol('name = "P"\n[[stage]]\nlayout = "1x3"\n' + "[[stage.viewport]]\n" * 3)
    one = [SERIES[1]]
    placed = place(empty.stages[0], Catalog({0: one}))
    assert [x.series.series_uid if x.series else None for x in placed] == ["ax5", None, None]  # no repeats
    gap = parse_protocol('name = "P"\n[[stage]]\nlayout = "1x3"\n[[stage.viewport]]\n[[stage.viewport]]\nempty = true\n'
                         "[[stage.viewport]]\n")  # fmt: skip
    placed = place(gap.stages[0], Catalog({0: SERIES}))
    assert [x.series.series_uid if x.series else None for x in placed] == ["loc", None, "ax5"]
    assert placed[1].note == ""  # empty on purpose: nothing to report


def test_headers_are_read_only_for_selectors_that_need_them(tmp_path):
    reads: list[str] = []

    def reader(path):  # type: ignore[no-untyped-def]
        reads.append(str(path))
        return {"plane": "axial", "image_type": (), "thickness": 1.0}

    light = [SeriesFacts("a", modality="CT", number=1, description="x"), SeriesFacts("b", modality="CT", number=2)]
    cat = Catalog({0: light}, {"a": "A", "b": "B"}, reader=reader)
    p = parse_protocol('name = "P"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\ndescription = "x"\n')
    assert place(p.stages[0], cat)[0].series.series_uid == "a" and reads == []
    p = parse_protocol('name = "P"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\nplane = "axial"\n')
    assert place(p.stages[0], cat)[0].series.series_uid == "a" and reads == ["A"]  # "first": stops at a match
    place(p.stages[0], cat)
    assert reads == ["A"]  # read once
    p = parse_protocol('name = "P"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\nplane = "axial"\npick = "largest"\n')
    place(p.stages[0], cat)
    assert reads == ["A", "B"]  # "largest" compares every axial series
    assert cat.has_plane(["axial"]) and reads == ["A", "B"]


def test_priors_in_a_stage():
    p = parse_protocol('name = "P"\n[[stage]]\nlayout = "1x2"\n[[stage.viewport]]\nplane = "axial"\n'
                       '[[stage.viewport]]\nstudy = "prior 1"\nplane = "axial"\n')  # fmt: skip
    assert p.stages[0].priors_needed == 1
    prior = [SeriesFacts(**{**f.__dict__, "series_uid": "p-" + f.series_uid, "study": 1}) for f in SERIES]
    got = place(p.stages[0], Catalog({0: SERIES, 1: prior}))
    assert [x.series.series_uid for x in got] == ["ax5", "p-ax5"]
    missing = place(p.stages[0], Catalog({0: SERIES}), missing_priors={1: "is not local (on PACS)"})
    assert missing[1].series is None and missing[1].note == "prior 1 is not local (on PACS)"


# ---------------------------------------------------------------- files and their errors


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ('name = "X"\n[[stage]]\nlayout = "2x2\n', "line 3", "not valid TOML"),
        ('name = "X"\n[[stage]]\nlayout = "2x2"\n[[stage.viewport]]\ndescripton = "a"\n',
         "line 5, stage[1].viewport[1].descripton", "unknown key 'descripton'"),
        ('name = "X"\n[[match]]\nmodality = "CT"\n[[match]]\nweight = "high"\nmodality = "MR"\n[[stage]]\n'
         'layout = "1x1"\n[[stage.viewport]]\n', "line 5, match[2].weight", "must be a number"),
        ('name = "X"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\n[[stage]]\nlayout = "2x9"\n'
         "[[stage.viewport]]\n", "line 6, stage[2].layout", "1 to 6 rows and columns"),
        ('name = "X"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\n[[stage.viewport]]\n',
         "line 3, stage[1].layout", "2 viewports do not fit layout 1x1"),
        ('name = "X"\n[[stage]]\nlayout = "1x2"\n[[stage.viewport]]\nplane = "axial"\n[[stage.viewport]]\n'
         'plane = "axail"\n', "line 7, stage[1].viewport[2].plane", "must be one of axial"),
        ('name = "X"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\ndescription = "(unclosed"\n',
         "line 5, stage[1].viewport[1].description", "invalid regular expression"),
        ('name = "X"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\nstudy = "previous"\n',
         "line 5, stage[1].viewport[1].study", 'must be "current" or "prior N"'),
        ('[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\n', "name", "needs a name"),
        ('name = "X"\n', "stage", "at least one [[stage]]"),
        ('name = "X"\n[[match]]\nweight = 3\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\n', "line 2, match[1]",
         "names no criterion"),
    ],
)  # fmt: skip
def test_a_protocol_with_a_mistake_says_where_and_why(text, where, reason):
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text, Path("typo.toml"))
    err = info.value
    assert err.where.startswith(where), err.where
    assert reason in err.reason, err.reason
    assert str(err).startswith("typo.toml: ")


def test_a_broken_file_is_skipped_and_logged_the_others_apply(tmp_path, caplog):
    data = tmp_path / "data"
    _write(data / FOLDER, "chest.toml", CT_CHEST)
    _write(data / FOLDER, "broken.toml", CT_CHEST.replace("pick = ", "pik = "))
    with caplog.at_level(logging.WARNING, logger="hilum.ui.viewer.hanging"):
        protocols, errors = load_protocols(data)
    assert [e.path.name for e in errors] == ["broken.toml"]
    assert isinstance(errors[0], LoadError) and errors[0].where == "line 22, stage[1].viewport[1].pik"
    assert "broken.toml: line 22, stage[1].viewport[1].pik: unknown key 'pik'" in caplog.text
    names = [p.name for p in protocols]
    assert "Chest" in names and "CT default" in names and "Default" in names
    assert next(p for p in protocols if p.name == "Chest").user


def test_a_user_file_overrides_the_shipped_one_of_the_same_name(tmp_path):
    data = tmp_path / "data"
    _write(data / FOLDER, "ct.toml", CT_CHEST.replace('name = "Chest"', 'name = "My CT"'))
    protocols, _ = load_protocols(data)
    names = [p.name for p in protocols]
    assert "My CT" in names and "CT default" not in names


def test_a_saved_protocol_reads_back_and_wins(tmp_path):
    text = protocol_toml(
        'My "chest" layout',
        [{"modality": ["CT"], "weight": 10, "required": True}, {"body_part": ["CHEST"], "weight": 5, "required": True},
         {"description": exact("CT Thorax (low dose)"), "weight": 5}],
        [{"name": "Saved layout", "layout": "1x2", "link_scroll": True, "link_window": False, "link_zoom": False,
          "viewport": [{"study": "current", "description": exact("Axial 1 mm lung"), "plane": "axial",
                        "window": "Lung", "fallback": True}, {"study": "prior 1", "plane": "coronal"}]}],
    )  # fmt: skip
    path = save_protocol(tmp_path / "data", 'My "chest" layout', text)
    assert path == tmp_path / "data" / FOLDER / "My_chest_layout.toml"
    protocols, errors = load_protocols(tmp_path / "data")
    assert not errors
    mine = next(p for p in protocols if p.user)
    assert mine.name == 'My "chest" layout'
    assert mine.stages[0].viewports[1].study == 1
    assert mine.stages[0].viewports[0].description.search("Axial 1 mm lung")
    assert not mine.stages[0].viewports[0].description.search("Axial 1 mm lung 2")
    study = _study(SERIES, description="CT Thorax (low dose)")
    assert choose(protocols, study) is mine


def test_the_engine_imports_no_qt():
    code = "import sys, hilum.ui.viewer.hanging; sys.exit(any(m.startswith('PySide6') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_test_study_is_a_chest_ct():
    assert STUDY.body_part == "CHEST" and STUDY.description == "CT Thorax"


def test_stage_keys_are_in_the_help_table_and_bound_once():
    from hilum.ui.viewer.shortcuts import SHORTCUTS, help_lines

    lines = {(keys, text.split(" (")[0]) for section, keys, text in help_lines() if section == "Viewer"}
    assert ("N", "Next stage of the hanging protocol") in lines
    assert ("Shift+N", "Previous stage of the hanging protocol") in lines
    assert ("Ctrl+Shift+H", "Save layout as protocol") in lines
    keys = [k for _name, ks, _text in SHORTCUTS for k in ks.split(";")]
    assert len(keys) == len(set(keys))
