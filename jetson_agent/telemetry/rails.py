"""Which power rail is the module's input: the one figure that is board power."""

# Rails that carry the whole module's input power, in the order they are looked for.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")


def input_rail(names):
    # type: (Iterable[str]) -> Optional[str]
    """The first of :data:`INPUT_RAILS` among the rail ``names``; None when the board reports
    no input rail (AGX Xavier, AGX Orin: their rails do not add up to the module's input)."""
    present = set(names)
    for rail in INPUT_RAILS:
        if rail in present:
            return rail
    return None
