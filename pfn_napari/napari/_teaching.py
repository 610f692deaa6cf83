"""Teaching mode: the steps of PFN, one layer at a time, each with a sentence on what it is."""

from __future__ import annotations

from dataclasses import dataclass

from .. import layer_data as L


@dataclass(frozen=True)
class Stage:
    title: str
    layer: str  # the one PFN layer shown in this stage
    text: str


STAGES: tuple[Stage, ...] = (
    Stage("1. Category map", L.CATEGORY,
          "The category network labels every pixel with a class (VOC colours; hover for the name) "
          "or background. It says what is where, but not which object is which: touching "
          "people are one blob."),
    Stage("2. Refinement by the counts", L.REFINED,
          "The instance network also predicts how many instances of each class there are. "
          "Classes whose count is at most tau are taken out (when two or more classes remain); "
          "with one class left, every foreground pixel takes it. Changing a count in the "
          "widget changes this map too."),
    Stage("3. Pixel-wise instance locations", L.LOCATIONS,
          "For every pixel the instance network predicts the box of the object the pixel belongs "
          "to: its center (cx, cy), top-left (lx, ly) and bottom-right (rx, ry) corners, here in "
          "pixels of the image. Pick a channel in the widget's 'Location channel' box: pixels of "
          "one object share a value, neighbouring objects differ."),
    Stage("4. Velocity vectors", L.VECTORS,
          "Each arrow runs from a pixel to the instance center it predicts (cx, cy), in the "
          "colour of the instance the pixel ends up in. Pixels of one object point at one place, "
          "so objects separate without any box proposals. Grey arrows: pixels in no instance "
          "(their cluster fell under the size threshold, or they lie too far from their "
          "cluster). Objects the ImageNet step named have no predicted locations: their arrows "
          "run from their pixels to their box's center. An arrow whose center falls outside the "
          "image stops at the border."),
    Stage("5. Clustering", L.CLUSTERS,
          "Per class, the cells are grouped by their predicted locations and positions into as "
          "many clusters as the count boxes say: the count network's number, or "
          "(grouping.count_source) one read off how many distinct boxes the pixels vote for. "
          "Change a count in the widget to see it re-cluster. Each grid cell shows the cluster it "
          "joined."),
    Stage("6. Instances", L.INSTANCES,
          "Clusters smaller than the size threshold are dropped and the rest are brought to full "
          "resolution: the instance segmentation, scored by mean class probability. With "
          "'Name missed objects' ticked (off in the shipped model), the ImageNet classifier "
          "also names objects the category map left as background (a bus, a dog), one instance "
          "per region, its outline fitted to the photo (GrabCut); with the weights' "
          "imagenet.check it also looks at every object of a class it knows, cropped: one it "
          "sees nothing of is dropped, one it is sure is another class (a 'train' that is a "
          "bus) relabelled; people it cannot judge stay as found. Paint or "
          "erase to fix it; Export writes an instance-id PNG and a COCO JSON."),
)


def stage_text(stage: Stage, method: str, sigma_role: str) -> str:
    """The sentence of ``stage``; the clustering stage also says what sigma does in
    ``method`` (``sigma_role``, the method's own line; empty: a general sentence)."""
    if stage.layer != L.CLUSTERS:
        return stage.text
    role = sigma_role or ("the width of the similarity the cells are grouped with; what it "
                          "changes depends on the method")
    return f"{stage.text} In '{method}' (the method running), sigma is {role}."
