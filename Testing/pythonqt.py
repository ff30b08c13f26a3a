"""`qt` as PythonQt gives it to Slicer's Python, over real PyQt5 5.15 widgets (Slicer 5.8 is built on Qt 5.15).

The PythonQt rules module code relies on, and which PyQt does not have:
- a Q_PROPERTY is an attribute (`w.text`, `w.currentRow = 2`) and is found before a method of the same name, so
  `w.currentRow()` raises "TypeError: 'int' object is not callable" as in Slicer;
- signals are connected by signature, `w.connect("clicked(bool)", slot)`; the slot gets as many of the signal's
  arguments as it takes; an unknown signature raises here (PythonQt only prints a warning, and the slot never runs);
- enums live under their class (`qt.QMessageBox.Yes`); static dialogs return the value (not PyQt's tuples);
- keyword arguments are refused by every wrapped C++ call, methods, slots, static methods and constructors alike,
  with PythonQt's ValueError "Called ... with keyword arguments, but called slot does not support kwargs."
  (PythonQtSlotFunction_CallImpl; PyQt accepts `addItem(text="a")`, and constructor keywords as properties);
- reading an unknown attribute raises AttributeError, and so does creating one on a Qt object (Python subclasses may);
- an exception in a slot does not unwind into the code that emitted the signal. Here it is kept and raised again by
  the call that emitted it (`button.click()`), or by `raise_slot_errors()`, so a broken slot fails the test.
Modal dialogs never open: `dialogs.DIALOGS` answers them from what the test queued and records each one."""

import os
import sys
import traceback
import types

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtWidgets, sip  # noqa: E402

import dialogs  # noqa: E402

_MODULES = (QtWidgets, QtGui, QtCore)
_WRAPPER_ATTRIBUTE = "_pythonqt_wrapper"
_slot_errors = []
_wrapper_classes = {}  # PyQt class -> wrapper class


_application = []  # the one QApplication, kept alive here


def application():
    if not _application:
        app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["Slicer"])
        app.setApplicationName("Slicer")
        app.setOrganizationName("MICD-tests")
        _application.append(app)
    return _application[0]


def raise_slot_errors():
    """Raise the first exception a slot raised since the last call (and forget the others)."""
    if _slot_errors:
        error = _slot_errors[0]
        _slot_errors.clear()
        raise error


# --- values crossing between PythonQt code and PyQt -------------------------------------------------------------
def wrap(value):
    """PyQt QObjects become their PythonQt wrapper (one per object, so `is` works); containers element-wise."""
    if isinstance(value, QtCore.QObject):
        existing = value.__dict__.get(_WRAPPER_ATTRIBUTE)
        if existing is not None:
            return existing
        wrapper = wrapper_class(type(value)).__new__(wrapper_class(type(value)))
        _bind(wrapper, value)
        return wrapper
    if isinstance(value, list):
        return [wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, sip.simplewrapper) and type(value).__module__.startswith("PyQt5"):
        return Value(value)
    return value


def unwrap(value):
    if isinstance(value, QtObject):
        return value._q
    if isinstance(value, Value):
        return value._v
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    return value


def _bind(wrapper, q):
    object.__setattr__(wrapper, "_q", q)
    object.__setattr__(wrapper, "_handlers", [])
    q.__dict__[_WRAPPER_ATTRIBUTE] = wrapper


def _call(function, args, kwargs):
    """Call a PyQt function with PythonQt values; what it returns comes back wrapped; slot errors surface here."""
    result = function(*unwrap(args), **{k: unwrap(v) for k, v in kwargs.items()})
    raise_slot_errors()
    return wrap(result)


def _refuse_keywords(where, kwargs):
    """PythonQt maps no keyword to a C++ parameter: only a slot whose last parameter is `QVariantMap kwargs` takes
    them, and no Qt, CTK or Slicer class the modules use has one."""
    if kwargs:
        raise ValueError(f"Called {where} with keyword arguments, but called slot does not support kwargs.")


def _keywordless(function, where):
    """`function` (a harness stand-in for a C++ call, such as a static dialog) refusing keywords as PythonQt does."""
    def call(*args, **kwargs):
        _refuse_keywords(where, kwargs)
        return function(*args)
    return call


def _slot_member(member):
    """PythonQt's own members of a wrapper (connect, disconnect, className; a signal's connect and emit) are C++
    slots as well: keywords are refused the same way."""
    def call(self, *args, **kwargs):
        _refuse_keywords(f"{member.__name__}()", kwargs)
        return member(self, *args)
    call.__name__ = member.__name__
    return call


def _method(function, name, owner=""):
    where = f"{owner}::{name}()" if owner else f"{name}()"

    def method(*args, **kwargs):
        _refuse_keywords(where, kwargs)
        return _call(function, args, {})
    method.__name__ = name
    return method


# --- signals ----------------------------------------------------------------------------------------------------
def _accepted_arguments(callable_):
    """How many signal arguments PythonQt passes: all of them, unless the slot is a Python function (or a bound
    method of one) without *args, which gets as many as it takes."""
    function, skip = callable_, 0
    if isinstance(callable_, types.MethodType) and isinstance(callable_.__func__, types.FunctionType):
        function, skip = callable_.__func__, 1
    if isinstance(function, types.FunctionType) and not function.__code__.co_flags & 0x04:  # CO_VARARGS
        return function.__code__.co_argcount - skip
    return None


def _normalized(signature):
    """'currentNodeChanged(vtkMRMLNode*)' -> the metaobject's spelling: a VTK pointer is a Python object here."""
    name, _, rest = signature.partition("(")
    types_ = [t.strip() for t in rest.rstrip(")").split(",") if t.strip()]
    types_ = ["PyQt_PyObject" if t.startswith("vtk") and t.endswith("*") else t for t in types_]
    text = QtCore.QMetaObject.normalizedSignature(f"{name}({','.join(types_)})".encode())
    return bytes(text).decode(), name, types_


def _signals(q):
    meta = q.metaObject()
    return {bytes(meta.method(i).methodSignature()).decode() for i in range(meta.methodCount())
            if meta.method(i).methodType() == QtCore.QMetaMethod.Signal}


class SlotCall:
    """Calls a Python slot with PythonQt's argument rules; keeps its exception instead of letting it reach Qt."""

    def __init__(self, callable_, count):
        self.callable = callable_
        accepted = _accepted_arguments(callable_)
        self.count = count if accepted is None else min(count, accepted)

    def __call__(self, *args):
        try:
            self.callable(*[wrap(a) for a in args[:self.count]])
        except BaseException as e:  # noqa: BLE001 - PythonQt prints it and goes on; the test must still fail
            traceback.print_exc()
            _slot_errors.append(e)


def _declared(q, signature):
    """A signal with VTK pointer arguments (a Python object to PyQt) must be one the stand-in class declares with
    its C++ signature in PYTHONQT_SIGNATURES, so 'currentNodeChanged(vtkMRMLScene*)' is as unknown as in Slicer."""
    if "vtk" not in signature:
        return True
    wanted = bytes(QtCore.QMetaObject.normalizedSignature(signature.encode())).decode()
    return any(wanted in getattr(cls, "PYTHONQT_SIGNATURES", ()) for cls in type(q).__mro__)


def _bound_signal(q, signature):
    normalized, name, types_ = _normalized(signature)
    if normalized not in _signals(q) or not _declared(q, signature):
        raise ValueError(f"{type(q).__name__} has no signal '{signature}' (PythonQt would only print a warning "
                         "and never call the slot)")
    signal = getattr(q, name)
    if types_:
        signal = signal[tuple(object if t == "PyQt_PyObject" else t for t in types_)]
    return signal, len(types_)


class Signal:
    """`w.clicked` in PythonQt: connect(slot), disconnect(slot), emit(...)."""

    def __init__(self, owner, signature):
        self._owner, self._signature = owner, signature

    @_slot_member
    def connect(self, slot):
        return self._owner.connect(self._signature, slot)

    @_slot_member
    def disconnect(self, slot=None):
        return self._owner.disconnect(self._signature, slot)

    @_slot_member
    def emit(self, *args):
        signal, _count = _bound_signal(self._owner._q, self._signature)
        signal.emit(*unwrap(args))
        raise_slot_errors()

    __call__ = emit


def _first_signature(q, name):
    return next((s for s in sorted(_signals(q), key=len, reverse=True) if s.startswith(name + "(")), None)


# --- wrapper classes --------------------------------------------------------------------------------------------
class _QtClassMeta(type):
    """Class-level lookups: enums (`qt.QMessageBox.Yes`), nested classes and static methods of the PyQt class."""

    def __getattr__(cls, name):
        if name.startswith("_"):
            raise AttributeError(name)
        intercepted = dialogs.static_dialog(cls._pyqt, name)
        if intercepted is not None:
            return _keywordless(intercepted, f"{cls.__name__}::{name}()")
        try:
            value = getattr(cls._pyqt, name)
        except AttributeError:
            raise AttributeError(f"{cls.__name__} has no attribute named '{name}'") from None
        if callable(value) and not isinstance(value, (int, type)):
            return _method(value, name, cls.__name__)
        return value


class QtObject(metaclass=_QtClassMeta):
    """A PythonQt wrapper around one PyQt QObject (`_q`)."""

    _pyqt = QtCore.QObject

    def __init__(self, *args, **kwargs):
        _refuse_keywords(f"{type(self).__name__}()", kwargs)  # PythonQt's constructors are slots too
        q = type(self)._pyqt(*unwrap(args))
        _bind(self, q)

    # PythonQt's own members on every QObject wrapper
    @_slot_member
    def connect(self, signal, slot):
        bound, count = _bound_signal(self._q, signal)
        handler = SlotCall(slot, count)
        bound.connect(handler)
        self._handlers.append((_normalized(signal)[0], slot, bound, handler))
        return True

    @_slot_member
    def disconnect(self, signal, slot=None):
        normalized = _normalized(signal)[0]
        found = False
        for entry in list(self._handlers):
            if entry[0] == normalized and (slot is None or entry[1] == slot):
                entry[2].disconnect(entry[3])
                self._handlers.remove(entry)
                found = True
        return found

    @_slot_member
    def className(self):
        return self._q.metaObject().className()

    def __getattr__(self, name):
        q = self.__dict__.get("_q")
        if q is None or name.startswith("_"):
            raise AttributeError(name)
        meta = q.metaObject()
        index = meta.indexOfProperty(name)
        if index >= 0:
            return wrap(meta.property(index).read(q))
        signature = _first_signature(q, name)
        if signature is not None:
            return Signal(self, signature)
        value = getattr(q, name, None)
        if value is None or name == _WRAPPER_ATTRIBUTE:
            for child in q.children():
                if child.objectName() == name:
                    return wrap(child)
            raise AttributeError(f"{type(self).__name__} has no attribute named '{name}'")
        if name in ("exec_", "exec") and isinstance(q, QtWidgets.QDialog):
            return _keywordless(dialogs.exec_dialog(q), f"{type(self).__name__}::{name}()")
        if callable(value) and not isinstance(value, (int, type)):
            return _method(value, name, type(self).__name__)
        return value

    def __setattr__(self, name, value):
        q = self._q
        meta = q.metaObject()
        index = meta.indexOfProperty(name)
        if index >= 0:
            prop = meta.property(index)
            if not prop.isWritable():
                raise AttributeError(f"Property '{name}' of {type(self).__name__} object is not writable")
            if not q.setProperty(name, unwrap(value)):
                raise AttributeError(f"Property '{name}' of type '{prop.typeName()}' does not accept an object of "
                                     f"type {type(value).__name__} ({value!r})")
            raise_slot_errors()
            return
        if hasattr(q, name) or _first_signature(q, name):
            raise AttributeError(f"'{name}' of {type(self).__name__} can not be overwritten")
        if type(self) in _wrapper_classes.values():
            raise AttributeError(f"'{name}' does not exist on {type(self).__name__} and creating new attributes on "
                                 "C++ objects is not allowed")
        object.__setattr__(self, name, value)  # a Python subclass of a Qt class may

    def __eq__(self, other):
        return isinstance(other, QtObject) and other._q is self._q

    def __hash__(self):
        return id(self._q)

    def __bool__(self):
        return True

    def __repr__(self):
        return f"<{type(self).__name__} object (PythonQt harness)>"


class Value:
    """A non-QObject Qt value returned to PythonQt code (a layout item, a table item...): its methods take and return
    PythonQt values, so `layout.itemAt(0).widget()` is the widget's wrapper, as in Slicer."""

    def __init__(self, value):
        object.__setattr__(self, "_v", value)

    def __getattr__(self, name):
        value = getattr(self._v, name)
        return _method(value, name, type(self._v).__name__) if callable(value) and not isinstance(value, (int, type)) \
            else value

    def __setattr__(self, name, value):
        setattr(self._v, name, unwrap(value))

    def __eq__(self, other):
        return self._v == unwrap(other)

    def __hash__(self):
        return hash(self._v)

    def __bool__(self):
        return not (hasattr(self._v, "isNull") and self._v.isNull()) if hasattr(self._v, "isNull") else True

    def __repr__(self):
        return f"<{type(self._v).__name__} value (PythonQt harness)>"


class _ValueMeta(_QtClassMeta):
    def __instancecheck__(cls, obj):
        return isinstance(unwrap(obj), cls._pyqt)


dialogs.DIALOGS.present = wrap  # dialog parents as the Slicer code sees them


def wrapper_class(pyqt_class):
    """The PythonQt class for a PyQt class (same name, same inheritance), made on first use."""
    if pyqt_class in _wrapper_classes:
        return _wrapper_classes[pyqt_class]
    if issubclass(pyqt_class, QtCore.QObject):
        bases = tuple(wrapper_class(b) for b in pyqt_class.__bases__ if isinstance(b, type)
                      and issubclass(b, QtCore.QObject)) or (QtObject,)
        cls = _QtClassMeta(pyqt_class.__name__, bases, {"_pyqt": pyqt_class, "__module__": "qt"})
    else:
        cls = _value_class(pyqt_class)
    _wrapper_classes[pyqt_class] = cls
    return cls


def _value_class(pyqt_class):
    """Non-QObject classes (QColor, QTableWidgetItem, Qt namespace...) are used as PyQt has them; only the class
    lookups go through the PythonQt rules (static dialogs, enums), and isinstance works with the PyQt objects."""

    def construct(cls, *args, **kwargs):
        _refuse_keywords(f"{pyqt_class.__name__}()", kwargs)
        return pyqt_class(*unwrap(args))

    return _ValueMeta(pyqt_class.__name__, (), {"_pyqt": pyqt_class, "__new__": construct, "__module__": "qt"})


class QtModule(types.ModuleType):
    """The `qt` module: every class of QtCore/QtGui/QtWidgets under one name, plus the `Qt` namespace."""

    def __init__(self, extra_classes=()):
        super().__init__("qt")
        self._extra = {c.__name__: c for c in extra_classes}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        pyqt_class = self._extra.get(name)
        if pyqt_class is None:
            pyqt_class = next((getattr(m, name) for m in _MODULES if isinstance(getattr(m, name, None), type)),
                              None)
        if pyqt_class is None or name.startswith("pyqt"):
            raise AttributeError(f"module 'qt' has no attribute '{name}'")
        cls = wrapper_class(pyqt_class)
        setattr(self, name, cls)
        return cls


def install(name="qt", extra_classes=()):
    """Create the QApplication and register the module as `sys.modules[name]`."""
    application()
    module = QtModule(extra_classes)
    module.__name__ = name
    sys.modules[name] = module
    return module
