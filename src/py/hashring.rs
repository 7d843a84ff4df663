//! `tooz.hashring.HashRing`'s engine: the ring in Rust, nodes kept as the Python objects given.

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyInt, PyList, PySet, PyString, PyTuple, PyType};

use crate::hashring::{Algorithm, Output, Ring};

#[pyclass(subclass, module = "tooz._tooz", name = "HashRing")]
pub struct PyHashRing {
    ring: Ring,
    algorithm: Option<Algorithm>,
    hash_function: String,
    partitions: i64,
    /// node -> weight: upstream's public `nodes`.
    nodes: Py<PyDict>,
    /// node -> slot in `slots`.
    index: Py<PyDict>,
    slots: Vec<Py<PyAny>>,
}

/// `utils.to_binary(node, 'utf-8')`, failing as it fails for other types.
fn node_key(node: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = node.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = node.cast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    Err(PyAttributeError::new_err(format!(
        "'{}' object has no attribute 'encode'",
        node.get_type().name()?
    )))
}

/// Runs `f` on the bytes of `data` (bytes without a copy, or a bytearray).
fn with_data_bytes<T>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<T>) -> PyResult<T> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    if let Ok(b) = data.cast::<PyByteArray>() {
        return f(&b.to_vec());
    }
    if data.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("Strings must be encoded before hashing"));
    }
    Err(PyTypeError::new_err("object supporting the buffer API required"))
}

impl PyHashRing {
    fn digest(&self, py: Python<'_>, data: &[u8]) -> PyResult<Output> {
        match self.algorithm {
            Some(a) => Ok(a.digest(data)),
            None => {
                let h = py.import("hashlib")?.call_method1("new", (&self.hash_function, PyBytes::new(py, data)))?;
                let hex: String = h.call_method0("hexdigest")?.extract()?;
                Output::new(&hex_bytes(&hex)?).ok_or_else(|| PyValueError::new_err(format!("{} digests are too wide", self.hash_function)))
            }
        }
    }

    /// Calls `f` with each of the `count` ring points of the node whose key is `key`.
    fn points_of(
        py: Python<'_>,
        algorithm: Option<Algorithm>,
        hash_function: &str,
        key: &[u8],
        count: usize,
        mut f: impl FnMut(&[u8]),
    ) -> PyResult<()> {
        match algorithm {
            Some(a) => a.for_each_point(key, count, f),
            None => {
                let h = py.import("hashlib")?.call_method1("new", (hash_function, PyBytes::new(py, key)))?;
                let key = PyBytes::new(py, key);
                for _ in 0..count {
                    h.call_method1("update", (&key,))?;
                    let hex: String = h.call_method0("hexdigest")?.extract()?;
                    f(&hex_bytes(&hex)?);
                }
            }
        }
        Ok(())
    }

    fn count(&self, weight: i64) -> usize {
        self.partitions.saturating_mul(weight).max(0) as usize
    }
}

fn hex_bytes(hex: &str) -> PyResult<Vec<u8>> {
    let hex = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex.to_owned() };
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| PyValueError::new_err(e.to_string())))
        .collect()
}

impl PyHashRing {
    /// An empty ring with upstream's defaults.
    fn empty(py: Python<'_>) -> Self {
        PyHashRing {
            ring: Ring::new(),
            algorithm: Algorithm::from_name("md5"),
            hash_function: "md5".to_owned(),
            partitions: 32,
            nodes: PyDict::new(py).unbind(),
            index: PyDict::new(py).unbind(),
            slots: Vec::new(),
        }
    }

    fn build(py: Python<'_>, nodes: &Bound<'_, PyAny>, partitions: i64, hash_function: &str) -> PyResult<Self> {
        let available = py.import("hashlib")?.getattr("algorithms_available")?;
        if !available.contains(hash_function)? {
            let mut names: Vec<String> = available.try_iter()?.map(|n| n?.extract()).collect::<PyResult<_>>()?;
            names.sort();
            return Err(PyValueError::new_err(format!(
                "Hash function {hash_function} is not supported on this system, supported are {}",
                names.join(", ")
            )));
        }
        let mut ring = PyHashRing {
            algorithm: Algorithm::from_name(hash_function),
            hash_function: hash_function.to_owned(),
            partitions,
            ..Self::empty(py)
        };
        let unique = PySet::new(py, nodes.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
        ring.add_nodes(py, &unique, 1)?;
        Ok(ring)
    }
}

#[pymethods]
impl PyHashRing {
    /// An empty ring whatever the arguments: `tooz.hashring.HashRing.__init__` builds it
    /// (`_setup`), so that a subclass with arguments of its own can hand ours on from its
    /// `__init__`, as upstream's pure-Python class allows.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(py: Python<'_>, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self::empty(py)
    }

    /// Makes this ring anew, from upstream's constructor arguments.
    #[pyo3(signature = (nodes, partitions=32, hash_function="md5"))]
    fn _setup(&mut self, py: Python<'_>, nodes: &Bound<'_, PyAny>, partitions: i64, hash_function: &str) -> PyResult<()> {
        *self = Self::build(py, nodes, partitions, hash_function)?;
        Ok(())
    }

    #[pyo3(signature = (node, weight=1))]
    fn add_node(&mut self, py: Python<'_>, node: &Bound<'_, PyAny>, weight: i64) -> PyResult<()> {
        let one = PyList::new(py, [node])?;
        self.add_nodes(py, &one, weight)
    }

    #[pyo3(signature = (nodes, weight=1))]
    fn add_nodes(&mut self, py: Python<'_>, nodes: &Bound<'_, PyAny>, weight: i64) -> PyResult<()> {
        let count = self.count(weight);
        for node in nodes.try_iter()? {
            let node = node?;
            let key = node_key(&node)?;
            let index = self.index.bind(py);
            let slot = match index.get_item(&node)? {
                Some(i) => i.extract::<u32>()?,
                None => {
                    self.slots.push(node.clone().unbind());
                    let i = (self.slots.len() - 1) as u32;
                    index.set_item(&node, i)?;
                    i
                }
            };
            let ring = &mut self.ring;
            let (algorithm, name) = (self.algorithm, &self.hash_function);
            Self::points_of(py, algorithm, name, &key, count, |p| ring.insert(slot, p))?;
            self.nodes.bind(py).set_item(&node, weight)?;
        }
        Ok(())
    }

    fn remove_node(&mut self, py: Python<'_>, node: &Bound<'_, PyAny>) -> PyResult<()> {
        let nodes = self.nodes.bind(py);
        let Some(weight) = nodes.get_item(node)? else {
            static UNKNOWN: PyOnceLock<Py<PyType>> = PyOnceLock::new();
            let cls = UNKNOWN.import(py, "tooz.hashring", "UnknownNode")?;
            return Err(PyErr::from_value(cls.call1((node,))?));
        };
        let weight: i64 = weight.extract().unwrap_or(0);
        nodes.del_item(node)?;
        let mut points = Vec::new();
        Self::points_of(py, self.algorithm, &self.hash_function, &node_key(node)?, self.count(weight), |p| points.push(p.to_vec()))?;
        self.ring.remove(&points);
        // The node keeps its slot: points it was given at a greater weight than it had when
        // removed stay on the ring, and still map to it, as in upstream.
        Ok(())
    }

    #[pyo3(signature = (data, ignore_nodes=None, replicas=1))]
    fn get_nodes<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        ignore_nodes: Option<&Bound<'py, PyAny>>,
        replicas: i64,
    ) -> PyResult<Bound<'py, PySet>> {
        let digest = with_data_bytes(data, |d| self.digest(py, d))?;
        let digest = digest.as_slice();
        if ignore_nodes.is_none() && replicas == 1 {
            let out = PySet::empty(py)?;
            if let Some(node) = self.ring.owner(digest).and_then(|o| self.slots.get(o as usize)) {
                out.add(node.bind(py))?;
            }
            return Ok(out);
        }
        let nodes = self.nodes.bind(py);
        // Slots to skip (removed nodes' too: their leftover points may remain), and how many
        // of them are nodes of the ring.
        let (mut ignored, mut ignored_nodes): (Vec<u32>, usize) = (Vec::new(), 0);
        if let Some(ignore) = ignore_nodes.filter(|i| i.is_truthy().unwrap_or(true)) {
            let index = self.index.bind(py);
            for node in ignore.try_iter()? {
                let node = node?;
                // Unhashable ignore entries fail as they would building upstream's set.
                node.hash()?;
                if let Some(i) = index.get_item(&node)? {
                    let i: u32 = i.extract()?;
                    if !ignored.contains(&i) {
                        ignored.push(i);
                        ignored_nodes += usize::from(nodes.contains(&node)?);
                    }
                }
            }
        }
        let candidates = nodes.len().saturating_sub(ignored_nodes);
        let wanted = (replicas.max(0) as usize).min(candidates);
        let owners = self.ring.walk(digest, wanted, |o| ignored.contains(&o));
        let out = PySet::empty(py)?;
        for o in owners {
            if let Some(node) = self.slots.get(o as usize) {
                out.add(node.bind(py))?;
            }
        }
        Ok(out)
    }

    fn __getitem__<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PySet>> {
        self.get_nodes(py, data, None, 1)
    }

    fn __len__(&self) -> usize {
        self.ring.len()
    }

    #[getter(nodes)]
    fn nodes_dict(&self, py: Python<'_>) -> Py<PyDict> {
        self.nodes.clone_ref(py)
    }

    /// `{point as int: node}`, as upstream keeps it (built on demand).
    #[getter]
    fn _ring<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let from_bytes = py.get_type::<PyInt>().getattr("from_bytes")?;
        for (point, owner) in self.ring.points() {
            if let Some(node) = self.slots.get(owner as usize) {
                out.set_item(from_bytes.call1((PyBytes::new(py, &point), "big"))?, node.bind(py))?;
            }
        }
        Ok(out)
    }

    /// The sorted ring points as ints.
    #[getter]
    fn _partitions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let from_bytes = py.get_type::<PyInt>().getattr("from_bytes")?;
        let ints = self
            .ring
            .points()
            .iter()
            .map(|(p, _)| from_bytes.call1((PyBytes::new(py, p), "big")))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, ints)
    }

    #[getter]
    fn _partition_number(&self) -> i64 {
        self.partitions
    }

    #[getter]
    fn _hash_function(&self) -> String {
        self.hash_function.clone()
    }
}
