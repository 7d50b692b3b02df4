//! The VMM's end of the REST API: the API thread (`api_server::server`) sends each request as
//! a [`VmmAction`] over a channel and writes an eventfd; the VMM thread answers every action,
//! in order, on the reply channel. What the answers are is [`crate::lifecycle`]'s business;
//! this module only carries them.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use api_server::request::{VmmAction, VmmResponse};
use api_server::server::{self, Limits, ServerError, SocketFile, VmmLink};
use devices::sync::lock;
use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::{self, ThreadKind};

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket cannot be served.
    #[error(transparent)]
    Socket(#[from] ServerError),
    /// The thread or an event could not be created.
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// The VMM's ends of the API channels.
pub struct Api {
    actions: Mutex<Receiver<VmmAction>>,
    notify: EventFd,
    responses: Sender<VmmResponse>,
    id: String,
    /// Removes the socket file when the last handle goes, as ember exits.
    _socket_file: SocketFile,
}

/// Binds `path` and starts the API thread.
pub fn start(path: &Path, max_payload: usize, id: &str) -> Result<Arc<Api>, ApiError> {
    let (listener, socket_file) = server::bind(path)?;
    let notify = EventFd::new(libc::EFD_NONBLOCK).map_err(ApiError::Thread)?;
    let (action_tx, action_rx) = mpsc::channel();
    let (response_tx, response_rx) = mpsc::channel();
    let link = VmmLink {
        actions: action_tx,
        notify: notify.try_clone().map_err(ApiError::Thread)?,
        responses: response_rx,
    };
    std::thread::Builder::new()
        .name("ember_api".into())
        .spawn(move || {
            seccomp::apply_or_exit(ThreadKind::Api);
            server::serve(listener, link, Limits::new(max_payload));
        })
        .map_err(ApiError::Thread)?;
    Ok(Arc::new(Api {
        actions: Mutex::new(action_rx),
        notify,
        responses: response_tx,
        id: id.into(),
        _socket_file: socket_file,
    }))
}

impl Api {
    /// The eventfd written with every request.
    pub fn notify_fd(&self) -> std::os::fd::RawFd {
        self.notify.as_raw_fd()
    }

    /// The next waiting action, if any.
    pub fn next(&self) -> Option<VmmAction> {
        let _ = self.notify.read();
        lock(&self.actions).try_recv().ok()
    }

    /// Answers the oldest unanswered action.
    pub fn reply(&self, response: VmmResponse) {
        if self.responses.send(response).is_err() {
            warn!("the API thread is gone; a response was dropped");
        }
    }

    /// The microVM's id (`--id`).
    pub fn id(&self) -> &str {
        &self.id
    }
}
