"""Slicer's scripted-module framework in the application; headless stand-ins elsewhere.

Which one is chosen by ``hasattr(slicer, "app")``, not by an ImportError: inside Slicer a failing
import is a real error and must show, not silently switch the module to the stand-ins.
Headless (the PyPI package ``slicer-core``: real MRML, no Qt), the Logic and the parameter node
work as in Slicer, storing parameters exactly as Slicer's parameterNodeWrapper does, so scenes
saved headless open in Slicer with the same parameters; the panel needs the application.
"""

from __future__ import annotations

import logging
import typing
import unittest
from dataclasses import dataclass
from typing import Annotated

import slicer


def inSlicerApplication() -> bool:
    """True inside the 3D Slicer application, False on slicer-core (tests, scripts)."""
    return hasattr(slicer, "app")


def processEvents() -> None:
    """Let the Slicer GUI repaint and react while Python waits (no-op headless)."""
    if inSlicerApplication():
        slicer.app.processEvents()


if inSlicerApplication():
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
else:

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            raise RuntimeError("the SAINRSlicer panel needs the 3D Slicer application")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int = 100) -> None:
            logging.info(message)

    class ScriptedLoadableModuleLogic:
        """The parts of Slicer's base class the Logic uses: the singleton parameter node."""

        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                slicer.mrmlScene.AddNode(node)
            return node

    @dataclass(frozen=True)
    class WithinRange:
        minimum: float
        maximum: float

        def validate(self, value: float) -> None:
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"{value} is not within [{self.minimum}, {self.maximum}]")

    class _HeadlessParameter:
        """One attribute of a headless parameter node wrapper, stored in the scripted module
        node as Slicer's serializers store it (numbers, strings and paths as text, bools as
        "True"/"False", nodes as node references)."""

        _DEFAULTS: typing.ClassVar[dict] = {float: 0.0, int: 0, str: "", bool: False}

        def __init__(self, name: str, annotation, default):
            if typing.get_origin(annotation) is Annotated:
                self.type, *self.validators = typing.get_args(annotation)
            else:
                self.type, self.validators = annotation, []
            self.name = name
            self.isNode = issubclass(self.type, slicer.vtkMRMLNode)
            if default is not None or self.isNode:
                self.default = default
            else:
                self.default = self._DEFAULTS.get(self.type, self.type())

        def __get__(self, wrapper, owner=None):
            if wrapper is None:
                return self
            node = wrapper.parameterNode
            if self.isNode:
                return node.GetNodeReference(self.name)
            text = node.GetParameter(self.name)
            return text == "True" if self.type is bool else self.type(text)

        def __set__(self, wrapper, value) -> None:
            for validator in self.validators:
                validator.validate(value)
            node = wrapper.parameterNode
            if self.isNode:
                node.SetParameter(self.name, "")
                node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            elif self.type is bool:
                node.SetParameter(self.name, "True" if value else "False")
            else:
                node.SetParameter(self.name, str(value))

    def parameterNodeWrapper(cls):
        """Headless stand-in for slicer.parameterNodeWrapper (attribute access, defaults)."""
        hints = typing.get_type_hints(cls, include_extras=True)
        parameters = [_HeadlessParameter(n, h, cls.__dict__.get(n)) for n, h in hints.items()]
        for parameter in parameters:
            setattr(cls, parameter.name, parameter)

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            for parameter in parameters:
                if not parameterNode.HasParameter(parameter.name):
                    parameter.__set__(self, parameter.default)

        cls.__init__ = __init__
        return cls
