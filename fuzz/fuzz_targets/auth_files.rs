//! The password file and ACL file parsers on arbitrary text. No panic; a
//! password file that parses is written back (`to_text`, what `starling passwd`
//! saves) and parses again with the same users; an ACL file that parses
//! answers publish, subscribe and receive checks for arbitrary clients.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use starling_broker::auth::acl::AclFile;
use starling_broker::auth::PasswordFile;
use starling_fuzz::Counting;
use starling_proto::mqtt::topic::{validate_topic_filter, validate_topic_name};

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    text: &'a str,
    client_id: &'a str,
    username: Option<&'a str>,
    topic: &'a str,
}

fuzz_target!(|input: Input| {
    if let Ok(file) = PasswordFile::parse(input.text) {
        let text = file.to_text();
        let again = PasswordFile::parse(&text)
            .unwrap_or_else(|e| panic!("written back as {text:?}, which does not parse: {e:?}"));
        assert_eq!(file.len(), again.len());
        assert_eq!(text, again.to_text());
        if let Some(user) = input.username {
            assert_eq!(file.contains(user), again.contains(user));
        }
    }
    if let Ok(acl) = AclFile::parse(input.text) {
        let (client, user, topic) = (input.client_id, input.username, input.topic);
        if validate_topic_name(topic).is_ok() {
            acl.check_publish(client, user, topic);
            acl.check_receive(client, user, topic);
        }
        if validate_topic_filter(topic).is_ok() {
            acl.check_subscribe(client, user, topic);
        }
    }
});
