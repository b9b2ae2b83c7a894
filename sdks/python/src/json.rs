//! Python objects to JSON values, so actions and events cross the boundary without a round
//! trip through JSON text.
//!
//! It keeps what `json.dumps` would keep and sends what JSON cannot hold in a readable form
//! rather than failing: the client's `json_default` callable (or `repr`) for unknown types,
//! `str(key)` for non-string keys, `"<cycle>"` for a container inside itself, a string for an
//! integer beyond 64 bits or a float that is not finite.

use pyo3::exceptions::PyRecursionError;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple,
};
use serde_json::{Map, Number, Value};

/// Deeper than this is refused, as `json.dumps` refuses it with a `RecursionError`.
const MAX_DEPTH: usize = 256;

/// Converts `value`; `default` turns an object of any other type into one JSON can hold.
pub(crate) fn to_value(
    value: &Bound<'_, PyAny>,
    default: Option<&Bound<'_, PyAny>>,
) -> PyResult<Value> {
    Converter {
        default,
        path: Vec::new(),
    }
    .convert(value, true)
}

struct Converter<'a, 'py> {
    default: Option<&'a Bound<'py, PyAny>>,
    /// The containers being converted, outermost first, to spot a cycle.
    path: Vec<*mut pyo3::ffi::PyObject>,
}

impl<'py> Converter<'_, 'py> {
    fn convert(&mut self, value: &Bound<'py, PyAny>, may_default: bool) -> PyResult<Value> {
        if value.is_none() {
            return Ok(Value::Null);
        }
        if let Ok(text) = value.cast::<PyString>() {
            return Ok(Value::String(text.to_string_lossy().into_owned()));
        }
        if let Ok(flag) = value.cast::<PyBool>() {
            return Ok(Value::Bool(flag.is_true()));
        }
        if value.is_instance_of::<PyInt>() {
            if let Ok(n) = value.extract::<i64>() {
                return Ok(Value::from(n));
            }
            if let Ok(n) = value.extract::<u64>() {
                return Ok(Value::from(n));
            }
            return Ok(Value::String(value.str()?.to_string_lossy().into_owned()));
        }
        if let Ok(float) = value.cast::<PyFloat>() {
            let n = float.value();
            return Ok(
                Number::from_f64(n).map_or_else(|| Value::String(n.to_string()), Value::Number)
            );
        }
        if let Ok(bytes) = value.cast::<PyBytes>() {
            return Ok(Value::String(
                String::from_utf8_lossy(bytes.as_bytes()).into_owned(),
            ));
        }
        if let Ok(bytes) = value.cast::<PyByteArray>() {
            return Ok(Value::String(
                String::from_utf8_lossy(&bytes.to_vec()).into_owned(),
            ));
        }
        let is_container = value.is_instance_of::<PyDict>()
            || value.is_instance_of::<PyList>()
            || value.is_instance_of::<PyTuple>()
            || value.is_instance_of::<PySet>()
            || value.is_instance_of::<PyFrozenSet>();
        if !is_container {
            return self.fallback(value, may_default);
        }
        let id = value.as_ptr();
        if self.path.contains(&id) {
            return Ok(Value::String("<cycle>".to_owned()));
        }
        if self.path.len() >= MAX_DEPTH {
            return Err(PyRecursionError::new_err(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.path.push(id);
        let converted = self.container(value);
        self.path.pop();
        converted
    }

    fn container(&mut self, value: &Bound<'py, PyAny>) -> PyResult<Value> {
        if let Ok(dict) = value.cast::<PyDict>() {
            let mut map = Map::with_capacity(dict.len());
            // Read from a snapshot of its items: `default` runs Python code, which may change
            // the dict meanwhile, and iterating a dict that changes size panics.
            for pair in dict.items().iter() {
                let (key, item): (Bound<'py, PyAny>, Bound<'py, PyAny>) = pair.extract()?;
                let key = match key.cast::<PyString>() {
                    Ok(text) => text.to_string_lossy().into_owned(),
                    Err(_) => key.str()?.to_string_lossy().into_owned(),
                };
                map.insert(key, self.convert(&item, true)?);
            }
            return Ok(Value::Object(map));
        }
        let mut items = Vec::new();
        for item in value.try_iter()? {
            items.push(self.convert(&item?, true)?);
        }
        Ok(Value::Array(items))
    }

    /// An object of another type: what `default` makes of it, else its `repr`.
    fn fallback(&mut self, value: &Bound<'py, PyAny>, may_default: bool) -> PyResult<Value> {
        if let (Some(default), true) = (self.default, may_default) {
            let plain = default.call1((value,))?;
            return self.convert(&plain, false);
        }
        Ok(Value::String(value.repr()?.to_string_lossy().into_owned()))
    }
}
