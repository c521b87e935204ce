//! User names for uids, from /etc/passwd, cached (including misses: a uid with no name
//! stays nameless until the cache is refreshed).

use std::collections::HashMap;

const CACHE_CAPACITY: usize = 4096;

#[derive(Default)]
pub struct UserNames {
    names: HashMap<u32, Option<String>>,
}

impl UserNames {
    pub fn name(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.names.get(&uid) {
            return name.clone();
        }
        if self.names.len() >= CACHE_CAPACITY {
            self.names.clear();
        }
        let name = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| lookup(&passwd, uid));
        self.names.insert(uid, name.clone());
        name
    }
}

/// `name:x:uid:gid:...` lines.
fn lookup(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_by_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nnobody:x:65534:65534::/:/usr/sbin/nologin\n";
        assert_eq!(lookup(passwd, 0).as_deref(), Some("root"));
        assert_eq!(lookup(passwd, 65534).as_deref(), Some("nobody"));
        assert_eq!(lookup(passwd, 1000), None);
    }
}
